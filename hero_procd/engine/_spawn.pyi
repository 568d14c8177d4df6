HAVE_CLONE3: int

def spawn(
    path: bytes,
    argv: list[bytes],
    env: list[bytes],
    cwd: bytes | None,
    out_fd: int,
    err_fd: int,
    cgroup_fd: int,
    procs_fd: int,
    /,
) -> tuple[int, int, int]: ...
