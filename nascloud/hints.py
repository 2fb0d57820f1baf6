"""The nascloud commands that messages suggest, written one way: each is a command line a user can paste as it is
(tests/test_screens_truth.py runs those its scenarios print). Placeholders are the usage lines' own: JOB,
JOB.yaml, DIR, and USD, H, CMD for an option's value."""


def command(*words: object) -> str:
    """`nascloud WORDS` in backticks, e.g. command("calibrate", "JOB.yaml") or command("resume", job_id)."""
    return "`" + " ".join(["nascloud", *map(str, words)]) + "`"
