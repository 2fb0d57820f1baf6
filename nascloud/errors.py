"""One error family. The library raises these; only the CLI turns them into `Error: ...` and an exit code."""

from nascloud.hints import command


class NascloudError(Exception):
    """A failure with a message a user can act on. Exit code 1: something at run time went wrong."""

    exit_code = 1


class UsageError(NascloudError):
    """The user's input is wrong (flags, job file, names that do not exist): fixable by editing it."""

    exit_code = 2


class JobGone(UsageError):
    """A job this machine remembers whose bucket no longer holds it (`rm` on another machine)."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.why = f"its bucket no longer holds it; {command('rm', job_id)} forgets it here"
        super().__init__(f"job {job_id} is gone: {self.why}")


class CloudError(NascloudError):
    """The cloud, network, credentials, quota or capacity failed us."""


class CapacityError(CloudError):
    """The cloud has no capacity for the offer in that zone right now: another zone may have some."""


class StaleWriterError(NascloudError):
    """This writer lost the race for a job's HEAD pointer: another (newer) writer owns the job now."""


class BudgetStop(NascloudError):
    """The job was stopped at its budget or deadline; it stays resumable."""

    exit_code = 3


class StorageError(CloudError):
    """A bucket or local disk refused a read or write: read-only, full, permissions, an I/O error."""
