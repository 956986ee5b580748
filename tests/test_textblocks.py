"""The shared line-block reader (pipeline.data.textblocks) on real gzip streams.

    .venv/bin/pytest tests/test_textblocks.py -q
"""

import gzip
import io

import pytest

from pipeline.data import textblocks

TEXT = b"".join(b"%d,0.5,0.25\n" % i for i in range(5000))


def test_chunks_span_gzip_members_and_report_compressed_positions() -> None:
    packed = gzip.compress(TEXT[:20000]) + gzip.compress(TEXT[20000:])
    chunks = list(textblocks.decompressed_chunks(io.BytesIO(packed), 1000))
    assert b"".join(text for text, _ in chunks) == TEXT
    positions = [pos for _, pos in chunks]
    assert positions == sorted(positions) and positions[-1] == len(packed)


def test_plain_text_passes_through_both_readers() -> None:
    assert b"".join(t for t, _ in textblocks.decompressed_chunks(io.BytesIO(TEXT), 999)) == TEXT
    with textblocks.open_text(io.BytesIO(TEXT)) as stream:
        assert stream.read() == TEXT


def test_truncated_gzip_is_an_eof_error() -> None:
    packed = gzip.compress(TEXT)
    with pytest.raises(EOFError, match="end-of-stream marker"):
        list(textblocks.decompressed_chunks(io.BytesIO(packed[: len(packed) // 2]), 512))
    with (pytest.raises(textblocks.gzip_errors()),
          textblocks.open_text(io.BytesIO(packed[: len(packed) // 2])) as stream):
        stream.read()


@pytest.mark.parametrize("min_bytes", [1, 700, 10_000])
def test_line_blocks_hold_every_line_once(min_bytes: int) -> None:
    text = TEXT + b"last-without-newline"
    chunks = [(text[i:i + 333], i) for i in range(0, len(text), 333)]
    blocks = list(textblocks.line_blocks(chunks, min_bytes))
    assert all(block.endswith(b"\n") for block, _ in blocks)
    assert b"".join(block for block, _ in blocks) == text + b"\n"
    assert all(len(block) >= min_bytes - 333 for block, _ in blocks[:-1])
    assert blocks[-1][1] == chunks[-1][1]  # a block carries the tag of the chunk it ends in


def test_a_line_without_end_is_not_csv() -> None:
    endless = io.BytesIO(b"x" * (textblocks.MAX_LINE_BYTES + 2))
    with pytest.raises(textblocks.LineTooLongError, match="longer than 64 MB"):
        list(textblocks.iter_text_blocks(endless, 16 << 20))


@pytest.mark.parametrize("block_bytes", [1, 7, 100, 4096, 1 << 20])
def test_read_blocks_hold_every_line_once_in_whole_lines(block_bytes: int) -> None:
    """The converter's zero-copy reader: views of whole lines, the text exactly once."""
    import io
    import random

    rng = random.Random(block_bytes)
    for ending in (b"", b"\n"):
        lines = [b"%d," % i + b"x" * rng.randint(0, 900) for i in range(300)]
        text = b"\n".join(lines) + ending
        blocks = [bytes(b) for b in textblocks.read_blocks(io.BytesIO(text), block_bytes)]
        assert b"".join(blocks) == b"\n".join(lines) + b"\n"
        assert all(b.endswith(b"\n") for b in blocks)
        if block_bytes >= 4096:
            assert len(blocks) < 300  # blocks gather many lines, not one line each
    assert list(textblocks.read_blocks(io.BytesIO(b""), 100)) == []


def test_read_blocks_stop_at_a_line_without_end() -> None:
    endless = io.BytesIO(b"x" * (textblocks.MAX_LINE_BYTES + 2))
    with pytest.raises(textblocks.LineTooLongError, match="longer than 64 MB"):
        list(textblocks.read_blocks(endless, 16 << 20))
