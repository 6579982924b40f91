from gpubio.cli import main

main()
