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
    home.mkdir(parents=True, exist_ok=True)
    return home
