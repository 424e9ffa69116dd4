import os
import re
import uuid

import pytest

from txguard.observability.logging import mask_card_numbers
from txguard.schema import ids as id_module
from txguard.schema.ids import new_random_id, new_random_ids, new_transaction_and_event_ids

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_random_ids_are_version_4_uuids_without_dashes() -> None:
    ids = {new_random_id() for _ in range(200)} | set(new_random_ids(200))
    assert len(ids) == 400
    for text in ids:
        assert HEX32.match(text)
        assert uuid.UUID(text).version == 4
        assert uuid.UUID(text).variant == uuid.RFC_4122


def test_transaction_and_event_ids_are_time_ordered_version_7() -> None:
    earlier_tx, earlier_event = new_transaction_and_event_ids(1_700_000_000_000_000)
    later_tx, later_event = new_transaction_and_event_ids(1_700_000_000_001_000)
    for text in (earlier_tx, earlier_event, later_tx, later_event):
        assert HEX32.match(text)
        assert uuid.UUID(text).version == 7
        assert uuid.UUID(text).variant == uuid.RFC_4122
        assert uuid.UUID(text).bytes[:6] in {
            (1_700_000_000_000).to_bytes(6, "big"),
            (1_700_000_000_001).to_bytes(6, "big"),
        }
    assert earlier_tx < later_tx and earlier_event < later_event
    assert uuid.UUID(earlier_event).bytes[:6] == (1_700_000_000_000).to_bytes(6, "big")


def test_a_millisecond_written_in_decimal_digits_only_moves_to_the_next_one_with_a_letter() -> None:
    # 0x019012345678 ms (June 2024): every id of it would hold a run of 13 decimal digits.
    for unix_ms, expected_ms in ((0x0190_1234_5678, 0x0190_1234_567A), (0, 0xA)):
        for text in new_transaction_and_event_ids(unix_ms * 1000 + 999):
            assert uuid.UUID(text).bytes[:6] == expected_ms.to_bytes(6, "big")
            assert uuid.UUID(text).version == 7
            assert mask_card_numbers(text) == text


def test_transaction_and_event_ids_differ_and_never_repeat() -> None:
    pairs = [new_transaction_and_event_ids(1_700_000_000_000_000) for _ in range(1000)]
    ids = [text for pair in pairs for text in pair]
    assert len(set(ids)) == len(ids)


def test_ids_in_a_forked_child_are_not_the_parents() -> None:
    new_transaction_and_event_ids(1_700_000_000_000_000)  # the pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_transaction_and_event_ids(1_700_000_000_000_000)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as child:
        child_ids = child.read()
    assert child_ids and child_ids != "".join(new_transaction_and_event_ids(1_700_000_000_000_000))


def test_no_identifier_holds_a_run_of_12_digits_that_log_masking_would_replace() -> None:
    # About 3% of random UUIDs hold such a run; 20,000 of each kind would show dozens.
    ids = new_random_ids(20_000) + [new_random_id() for _ in range(2_000)]
    ids += [i for _ in range(10_000) for i in new_transaction_and_event_ids(1_700_000_000_000_000)]
    assert not [i for i in ids if re.search(r"[0-9]{12}", i)]
    assert all(mask_card_numbers(i) == i for i in ids)


def test_a_draw_with_a_digit_run_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clean = bytes.fromhex("abcdef0123abcdef0123abcdef0123ab")
    draws = iter([bytes.fromhex("12345678901234567890123456789012"), clean])
    monkeypatch.setattr(os, "urandom", lambda count: next(draws))
    assert new_random_id() == _v4_hex(clean)


def _v4_hex(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw, version=4)).replace("-", "")


@pytest.mark.parametrize("copies", [1, 16], ids=["four ids", "64 ids"])
def test_a_batch_draw_redraws_each_id_that_holds_a_digit_run(
    monkeypatch: pytest.MonkeyPatch, copies: int
) -> None:
    # Four ids: the first all digits; the second and third joined by a run across their border
    # (neither holds 12 digits alone); the fourth ends in 12 digits. Then one draw of clean
    # replacements for the first and fourth of each four.
    first = bytes.fromhex("12345678901234567890123456789012")
    second = bytes.fromhex("abcdef0123abcdef0123abcdef123456")
    third = bytes.fromhex("789012abcdefabcdefabcdefabcdefab")
    fourth = bytes.fromhex("abcdefabcdefabcdefab123456789012")
    clean = [
        bytes.fromhex(f"abcdef0123abcdef0123abcd{n:08x}") for n in range(0xA0, 0xA0 + 2 * copies)
    ]
    draws = iter([(first + second + third + fourth) * copies, b"".join(clean)])
    monkeypatch.setattr(os, "urandom", lambda count: next(draws))
    # A pool of its own, drawn afresh from the draws above.
    monkeypatch.setattr(id_module, "_random", id_module._RandomPool())
    ids = new_random_ids(4 * copies)
    redrawn = iter(clean)
    assert ids == [
        _v4_hex(next(redrawn)) if index % 4 in (0, 3) else _v4_hex((second, third)[index % 4 - 1])
        for index in range(4 * copies)
    ]
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
