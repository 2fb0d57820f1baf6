"""Where nascloud keeps its own files on the user's machine."""

import os
from pathlib import Path


def nascloud_home() -> Path:
    """NASCLOUD_HOME, or the user's data directory (e.g. ~/.local/share/nascloud)."""
    env = os.environ.get("NASCLOUD_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        from platformdirs import user_data_dir

        home = Path(user_data_dir("nascloud", appauthor=False))
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # only its user: it holds job URLs, SSH keys, local hosts
    # Tighten one an older nascloud left 0755: the default folder (nascloud's own), or one holding a jobs.db that
    # others may read (an older nascloud's; this one makes it 0600). Never another folder NASCLOUD_HOME names that
    # was there before: it may be shared on purpose.
    jobs_db = home / "jobs.db"
    if not env or (jobs_db.exists() and jobs_db.stat().st_mode & 0o077):
        home.chmod(0o700)
    return home
