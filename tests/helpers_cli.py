"""The command line's contract on bad input, as tests check it: exit 2, one line naming the problem, no traceback."""


def assert_clean_failure(proc, message):
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("dist-lacl")]) == 1
