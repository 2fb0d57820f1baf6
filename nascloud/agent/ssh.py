"""Opt-in SSH on an instance, for debugging (compute.ssh_cidr set; the bootstrap's NASCLOUD_SSH=1).

The instance has a host key of its own: on a cloud image the system sshd's (made at first boot), on
`local` one it generates for a private sshd of the host. It publishes the public half, with its address,
port and user, at hosts/<instance-id>.json in the job's bucket, where `nascloud ssh JOB` pins it. The
client key it admits is the bundle's ssh_public_key, whose private half stays on the launching machine:
nothing private is in user data, metadata or the bucket. The firewall rule admitting compute.ssh_cidr
to port 22 is the cloud provisioner's; without ssh_cidr none of this runs and no port is open. A cloud's
login may sudo only with compute.ssh_sudo; either sshd checks the key files' modes (StrictModes yes).
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from nascloud.errors import CloudError, NascloudError
from nascloud.remote import HostRecord

log = logging.getLogger("nascloud.instance")

CLOUD_USER = "nascloud"  # the login the instance makes for `nascloud ssh` on a cloud
SYSTEM_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key.pub")


def open_ssh(bucket, instance_id: str, cloud: str, root: Path) -> None:
    """Admit the job's key, publish the host key; a failure is said (log and event), never ends the job."""
    try:
        bundle = bucket.bundle()
        authorized = bundle.ssh_public_key
        if not authorized:
            raise NascloudError("the bundle has no ssh_public_key (launched by a nascloud without opt-in SSH)")
        host = (local_sshd(root, instance_id, authorized) if cloud == "local"
                else _cloud(cloud, authorized, bundle.spec.compute.ssh_sudo))
        host.publish(bucket, instance_id)
        log.info("SSH open for debugging: %s@%s:%s, host key %s", host.user, host.address, host.port,
                 host.host_key[:40])
    except (NascloudError, OSError, subprocess.CalledProcessError) as error:
        log.warning("could not open SSH: %s", error)
        bucket.add_event("ssh", f"SSH to {instance_id} could not be opened: {error}")


def _public_line(path: Path) -> str:
    """'ssh-ed25519 AAAA...' from a .pub file, without its comment."""
    return " ".join(path.read_text().split()[:2])


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)


def _unwritable_by_others(*paths: Path) -> None:
    """StrictModes: sshd refuses an authorized_keys that another user could change, in it or a folder above it
    (up to the login's home, else /). A umask of 002 leaves nascloud's folders group-writable."""
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o022)


# --- local: a private sshd per host ---------------------------------------------------------------
def local_sshd(root: Path, instance_id: str, authorized: str) -> HostRecord:
    """A private sshd on a free 127.0.0.1 port, with a host key made here and only the job's key admitted.
    It inherits the host's mark, and its sessions get it back (sshd clears their environment); its pid
    goes where the host's power-off finds it, since sshd's process title overwrites its environment."""
    from nascloud.paths import nascloud_home
    from nascloud.provisioners.local import INSTANCE_ENV, SSHD_PID

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        raise NascloudError("OpenSSH's sshd is not installed on this machine (apt-get install openssh-server)")
    folder = root / "ssh"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_key = folder / "ssh_host_ed25519_key"  # ssh-keygen makes it 0600, as sshd requires of a host key
    if not host_key.exists():
        _keygen(host_key, f"nascloud-host-{instance_id}")
    keys = folder / "authorized_keys"
    keys.write_text(authorized + "\n")
    keys.chmod(0o600)
    # The host's folders are nascloud's own up to NASCLOUD_HOME (made 0700); what is above it is the user's.
    home = nascloud_home()
    _unwritable_by_others(*(path for path in (folder, *folder.parents) if home in (path, *path.parents)))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    # SHLVL=1 keeps bash from sourcing ~/.bashrc in non-interactive sessions; NASCLOUD_ROOT says where the
    # host's files are.
    session_env = " ".join(f'"{key}={value}"' for key, value in
                           {INSTANCE_ENV: os.environ[INSTANCE_ENV], "SHLVL": "1", "NASCLOUD_ROOT": root}.items())
    for _ in range(3):  # the free port may be taken between probing and binding
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / SSHD_PID}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes yes", "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp", f"SetEnv {session_env}", "LogLevel ERROR", ""]))
        with open(folder / "sshd.log", "ab") as out:
            process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        (root / SSHD_PID).write_text(str(process.pid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return HostRecord(_public_line(host_key.with_name(host_key.name + ".pub")), "127.0.0.1", port,
                                  getpass.getuser())
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise NascloudError(f"the host's sshd did not start; see {folder / 'sshd.log'}")


# --- clouds: the image's sshd on port 22 --------------------------------------------------------------
def _cloud(cloud: str, authorized: str, sudo: bool) -> HostRecord:
    if not SYSTEM_HOST_KEY.exists():  # images make it at first boot; this is the backstop
        subprocess.run(["ssh-keygen", "-A"], check=True, capture_output=True)
    _authorize(CLOUD_USER, authorized, sudo)
    return HostRecord(_public_line(SYSTEM_HOST_KEY), public_address(cloud), 22, CLOUD_USER)


def _authorize(user: str, key: str, sudo: bool) -> None:
    """A login for the job's key; with sudo (compute.ssh_sudo) as the images' own default user has, else a
    plain user, who cannot change the host."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True, capture_output=True)
    home = Path(pwd.getpwnam(user).pw_dir)
    folder = home / ".ssh"
    folder.mkdir(mode=0o700, exist_ok=True)
    keys = folder / "authorized_keys"
    present = keys.read_text().splitlines() if keys.exists() else []
    if key not in present:
        keys.write_text("".join(line + "\n" for line in [*present, key]))
    keys.chmod(0o600)
    for path in (folder, keys):
        shutil.chown(path, user, user)
    _unwritable_by_others(home)
    if sudo:
        sudoers = Path("/etc/sudoers.d/90-nascloud")
        sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)


def public_address(cloud: str) -> str:
    """The instance's public IPv4 from its metadata service (the address compute.ssh_cidr's rule admits to)."""
    if cloud == "aws":
        from nascloud.provisioners.aws import METADATA_ENV

        base = os.environ.get(METADATA_ENV, "http://169.254.169.254").rstrip("/")
        token = _get(urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}))
        request = urllib.request.Request(f"{base}/latest/meta-data/public-ipv4",
                                         headers={"X-aws-ec2-metadata-token": token})
    elif cloud == "gcp":
        from nascloud.provisioners.gcp import METADATA_ENV, METADATA_URL

        base = os.environ.get(METADATA_ENV, METADATA_URL).rstrip("/")
        request = urllib.request.Request(f"{base}/instance/network-interfaces/0/access-configs/0/external-ip",
                                         headers={"Metadata-Flavor": "Google"})
    else:
        raise NascloudError(f"no public address for cloud {cloud!r}")
    address = _get(request)
    if not address:
        raise CloudError(f"this {cloud} instance has no public IPv4 address; SSH from compute.ssh_cidr needs one")
    return address


def _get(request: urllib.request.Request) -> str:
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.read().decode().strip()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return ""  # the metadata has no such value: no public address
        raise CloudError(f"the metadata service answered {error.code} for {request.full_url}") from None
    except OSError as error:
        raise CloudError(f"cannot read the instance's metadata at {request.full_url} ({error})") from None
