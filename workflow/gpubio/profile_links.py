"""Link the repository's Snakemake profiles into the user's config directory (`scripts/link-profiles`).

Snakemake looks a bare profile name (`--profile slurm-gpu`) up in the working directory and
in `$XDG_CONFIG_HOME/snakemake` (`~/.config/snakemake`), not in `profiles/`. A link per
profile makes the name work from anywhere and follows the repository's edits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPOSITORY_PROFILES = Path(__file__).resolve().parents[2] / "profiles"


class ProfileLinkError(RuntimeError):
    """A profile name is taken in the config directory by something that is not our link."""


def snakemake_config_dir(environ=os.environ) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "~"), ".config")
    return Path(base).expanduser() / "snakemake"


def link_profiles(profiles_dir: Path, config_dir: Path) -> list[tuple[str, Path]]:
    """Link every profile (a directory with config.yaml) into config_dir; returns (name, link).

    An existing link is replaced; a real file or directory of that name is the user's own
    profile and is left alone (an error, before anything changes)."""
    profiles = sorted(p for p in Path(profiles_dir).iterdir() if (p / "config.yaml").is_file())
    if not profiles:
        raise ProfileLinkError(f"no profiles (directories with config.yaml) in {profiles_dir}")
    taken = [
        config_dir / p.name
        for p in profiles
        if (config_dir / p.name).exists() and not (config_dir / p.name).is_symlink()
    ]
    if taken:
        raise ProfileLinkError(
            f"{', '.join(map(str, taken))} exist(s) and are not links: your own profile(s)? "
            f"Rename or remove them, or use --profile {profiles_dir}/<name>"
        )
    config_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for profile in profiles:
        link = config_dir / profile.name
        tmp = link.with_name(f".{profile.name}.link-tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(profile.resolve(), target_is_directory=True)
        os.replace(tmp, link)  # atomic: the name never points nowhere
        linked.append((profile.name, link))
    return linked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="link-profiles",
        description="Link the repository's Snakemake profiles (profiles/*) into your Snakemake config directory, "
        "so `snakemake --profile slurm-gpu` works as typed.",
    )
    parser.add_argument("--config-dir", type=Path, help="default: $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake")
    parser.add_argument(
        "--profiles", type=Path, default=REPOSITORY_PROFILES, help="default: the repository's profiles/"
    )
    args = parser.parse_args(argv)
    config_dir = args.config_dir or snakemake_config_dir()
    try:
        linked = link_profiles(args.profiles, config_dir)
    except (ProfileLinkError, OSError) as error:
        print(f"link-profiles: {error}", file=sys.stderr)
        return 1
    for name, link in linked:
        print(f"{link} -> {os.readlink(link)}  (snakemake --profile {name})")
    return 0
