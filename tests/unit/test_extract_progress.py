"""The progress line: drawn on a terminal only, throttled, erased at the end."""

from __future__ import annotations

import io

from bulk.extraction.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_off_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(3, 3_000_000, stream=out)
    p.update(1, 1_000_000, 10, force=True)
    p.close()
    assert out.getvalue() == ""


def test_drawn_on_a_terminal_then_erased() -> None:
    out = Tty()
    p = Progress(3, 3_000_000, stream=out)
    p.update(1, 1_500_000, 1234, force=True)
    p.update(2, 2_000_000, 2000)  # within the interval: not drawn again
    text = out.getvalue()
    assert "1/3 files" in text and "1.5 MB/3.0 MB" in text and "1,234 packets" in text
    assert "2/3 files" not in text
    p.close()
    assert out.getvalue().endswith("\r\x1b[K")
