import io as _io

from nca_cli.core.progress import Progress


def test_plain_lines_in_logs_at_a_steady_pace():
    out = _io.StringIO()                       # not a terminal: plain lines
    with Progress(stream=out, interval=3600) as p:
        task = p.add("epoch", total=5)
        for k in range(5):
            task.advance(info=f"loss {1 / (k + 1):.2f}")
        p.log("done")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/5 (20%)  loss 1.00  elapsed")       # the first at once
    assert lines[1].startswith("epoch 5/5 (100%)  loss 0.20")              # the last always
    assert len(lines) == 3 and lines[2] == "done"                          # nothing in between (interval)


def test_every_update_is_written_and_flushed_with_a_zero_interval():
    out = _io.StringIO()
    with Progress(stream=out, interval=0) as p:
        t = p.add("cases")
        for n in range(3):
            t.update(completed=n + 1, info=f"case{n}")
    assert [ln.split("  ")[0] for ln in out.getvalue().splitlines()] == ["cases 1", "cases 2", "cases 3"]


def test_quiet_writes_nothing():
    out = _io.StringIO()
    with Progress(quiet=True, stream=out) as p:
        p.add("x", total=2).advance()
        p.log("hidden")
    assert out.getvalue() == ""
