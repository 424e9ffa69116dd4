import re
import uuid

from txguard.schema.ids import new_random_id, new_transaction_and_event_ids

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_random_ids_are_version_4_uuids_without_dashes() -> None:
    ids = {new_random_id() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        assert HEX32.match(text)
        assert uuid.UUID(text).version == 4


def test_transaction_ids_are_time_ordered_version_7() -> None:
    earlier, event = new_transaction_and_event_ids(1_700_000_000_000_000)
    later, _ = new_transaction_and_event_ids(1_700_000_000_001_000)
    assert HEX32.match(earlier) and HEX32.match(event)
    assert uuid.UUID(earlier).version == 7 and uuid.UUID(event).version == 4
    assert earlier < later
    assert uuid.UUID(earlier).bytes[:6] == (1_700_000_000_000).to_bytes(6, "big")
