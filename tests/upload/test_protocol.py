"""The chunk form's fields: aliases, bounds, checksum format, size limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from chute.config import Settings
from chute.errors import ChuteError, Problem
from chute.upload.protocol import add_field, has_position, parse_chunk_request

SHA = "0123456789abcdef" * 4


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        chunk_size=1000,
        max_chunk_bytes=4000,
        max_total_chunks=50,
        max_file_bytes=100_000,
    )


def fields_of(*pairs: tuple[str, str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in pairs:
        add_field(fields, name, value)
    return fields


def parse(settings: Settings, **fields: str) -> object:
    return parse_chunk_request(7, fields_of(*fields.items()), "data.csv", settings)


def error(settings: Settings, **fields: str) -> ChuteError:
    with pytest.raises(ChuteError) as caught:
        parse(settings, **fields)
    return caught.value


def test_a_good_request(settings: Settings) -> None:
    request = parse_chunk_request(
        7,
        fields_of(
            ("chunk_index", "2"),
            ("total_chunks", "5"),
            ("chunk_sha256", SHA),
            ("chunk_size", "1000"),
            ("file_size", "4321"),
        ),
        "data.csv",
        settings,
    )
    assert (request.job_id, request.index, request.total_chunks) == (7, 2, 5)
    assert request.sha256 == SHA
    assert (request.chunk_size, request.file_size) == (1000, 4321)
    assert request.file_name == "data.csv"
    assert not request.is_last


def test_optional_fields_may_be_missing_or_empty(settings: Settings) -> None:
    request = parse_chunk_request(
        1,
        fields_of(("chunk_index", "0"), ("total_chunks", "1"), ("chunk_sha256", "")),
        "",
        settings,
    )
    assert request.sha256 is None
    assert request.chunk_size is None
    assert request.file_size is None
    assert request.file_name is None
    assert request.is_last


def test_camel_case_aliases(settings: Settings) -> None:
    fields = fields_of(("chunkIndex", "3"), ("totalChunks", "4"))
    assert fields == {"chunk_index": "3", "total_chunks": "4"}
    assert has_position(fields)
    request = parse_chunk_request(7, fields, None, settings)
    assert (request.index, request.total_chunks) == (3, 4)
    assert request.is_last


def test_has_position_needs_both(settings: Settings) -> None:
    assert not has_position(fields_of(("chunkIndex", "3")))
    assert not has_position(fields_of(("total_chunks", "3")))


@pytest.mark.parametrize(
    "pairs",
    [
        [("chunk_index", "1"), ("chunk_index", "1")],
        [("chunk_index", "1"), ("chunkIndex", "1")],
        [("totalChunks", "2"), ("total_chunks", "3")],
    ],
)
def test_the_same_field_twice_is_422(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ChuteError) as caught:
        fields_of(*pairs)
    assert caught.value.status == 422
    assert "twice" in caught.value.detail


def test_unknown_fields_are_ignored_and_values_trimmed() -> None:
    fields = fields_of(("submit", "Upload"), ("chunk_index", " 4 \r\n"), ("CHUNK_INDEX", "9"))
    assert fields == {"chunk_index": "4"}


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        pytest.param({"total_chunks": "3"}, "chunk_index", id="no-index"),
        pytest.param({"chunk_index": "0"}, "total_chunks", id="no-total"),
        pytest.param({"chunk_index": "", "total_chunks": "3"}, "chunk_index", id="empty-index"),
        pytest.param({"chunk_index": "-1", "total_chunks": "3"}, "chunk_index", id="negative"),
        pytest.param({"chunk_index": "1.0", "total_chunks": "3"}, "chunk_index", id="decimal"),
        pytest.param({"chunk_index": "one", "total_chunks": "3"}, "chunk_index", id="word"),
        pytest.param({"chunk_index": "0x1", "total_chunks": "3"}, "chunk_index", id="hex"),
        pytest.param({"chunk_index": "3", "total_chunks": "3"}, "chunk_index", id="index=total"),
        pytest.param({"chunk_index": "0", "total_chunks": "0"}, "total_chunks", id="total-0"),
        pytest.param({"chunk_index": "0", "total_chunks": "51"}, "total_chunks", id="total>max"),
    ],
)
def test_position_out_of_bounds_is_422(
    settings: Settings, fields: dict[str, str], mentions: str
) -> None:
    problem = error(settings, **fields)
    assert problem.problem is Problem.INVALID_FIELD
    assert problem.status == 422
    assert mentions in problem.detail


def test_the_bounds_themselves_are_allowed(settings: Settings) -> None:
    parse(settings, chunk_index="49", total_chunks="50")
    parse(settings, chunk_index="0", total_chunks="1")


def test_a_unicode_digit_is_422_not_a_crash(settings: Settings) -> None:
    assert error(settings, chunk_index="²", total_chunks="3").status == 422


def test_sha256_is_lowercased(settings: Settings) -> None:
    request = parse_chunk_request(
        7,
        fields_of(("chunk_index", "0"), ("total_chunks", "1"), ("chunk_sha256", SHA.upper())),
        None,
        settings,
    )
    assert request.sha256 == SHA


@pytest.mark.parametrize(
    "sha",
    [SHA[:-1], SHA + "0", "g" * 64, SHA[:32] + " " + SHA[33:], "sha256:" + SHA[7:]],
    ids=["63", "65", "not-hex", "space", "prefixed"],
)
def test_a_malformed_sha256_is_422(settings: Settings, sha: str) -> None:
    problem = error(settings, chunk_index="0", total_chunks="1", chunk_sha256=sha)
    assert problem.status == 422
    assert "chunk_sha256" in problem.detail


def test_chunk_size_over_the_limit_is_413(settings: Settings) -> None:
    problem = error(settings, chunk_index="0", total_chunks="2", chunk_size="4001")
    assert problem.problem is Problem.CHUNK_TOO_LARGE
    assert problem.status == 413
    assert "4000" in problem.detail
    parse(settings, chunk_index="0", total_chunks="2", chunk_size="4000")


def test_chunk_size_zero_is_422(settings: Settings) -> None:
    assert error(settings, chunk_index="0", total_chunks="2", chunk_size="0").status == 422


def test_file_size_checks(settings: Settings) -> None:
    too_big = error(settings, chunk_index="0", total_chunks="2", file_size="100001")
    assert (too_big.problem, too_big.status) == (Problem.FILE_TOO_LARGE, 413)
    assert error(settings, chunk_index="0", total_chunks="2", file_size="0").status == 422
    fewer_bytes_than_chunks = error(settings, chunk_index="0", total_chunks="5", file_size="4")
    assert fewer_bytes_than_chunks.status == 422
    parse(settings, chunk_index="0", total_chunks="5", file_size="5")
    parse(settings, chunk_index="0", total_chunks="2", file_size="100000")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a\x00b", "must not hold control characters (character 2 is U+0000)"),
        ("\x1b[31m", "must not hold control characters (character 1 is U+001B)"),
        ("a\r\nb", "must not hold control characters (character 2 is U+000D)"),
        ("a\x9bb", "must not hold control characters (character 2 is U+009B)"),
        ("a\u2029b", "must not hold control characters (character 2 is U+2029)"),
        ("\u2066x", "must not hold control characters (character 1 is U+2066)"),
        ("x" * 201, "must be at most 200 characters, not 201"),
    ],
)
def test_a_file_name_with_control_characters_is_refused(
    settings: Settings, name: str, why: str
) -> None:
    fields = fields_of(("chunk_index", "0"), ("total_chunks", "1"))
    with pytest.raises(ChuteError) as caught:
        parse_chunk_request(7, fields, name, settings)
    assert caught.value.problem is Problem.INVALID_FIELD
    assert caught.value.detail == f"the file part's filename {why}"


@pytest.mark.parametrize("name", ["x" * 200, "Zoë 📈 👩\u200d💻.csv", "", None])
def test_plain_file_names_are_taken(settings: Settings, name: str | None) -> None:
    fields = fields_of(("chunk_index", "0"), ("total_chunks", "1"))
    assert parse_chunk_request(7, fields, name, settings).file_name == (name or None)
