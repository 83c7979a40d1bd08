"""A handler names the destination it delivers to; by default each handler is its own."""

from __future__ import annotations

import pytest

from dispatchbox import Dispatcher
from dispatchbox.errors import ConfigurationError
from dispatchbox.events import OutboxEvent


def test_destination_defaults_to_the_event_type_and_can_be_shared() -> None:
    dispatcher = Dispatcher()

    @dispatcher.handler("order.created", destination="ledger")
    def created(event: OutboxEvent) -> None: ...

    @dispatcher.batch_handler("order.paid", destination="ledger")
    def paid(events: list[OutboxEvent]) -> None: ...

    @dispatcher.handler("order.shipped")
    def shipped(event: OutboxEvent) -> None: ...

    assert [s.destination for s in dispatcher.specs()] == ["ledger", "ledger", "order.shipped"]


@pytest.mark.parametrize("name", ["", "has space", "x" * 101, "a/b"])
def test_a_destination_name_that_cannot_be_a_label_is_refused(name: str) -> None:
    dispatcher = Dispatcher()
    with pytest.raises(ConfigurationError, match="destination for 'e'"):
        dispatcher.register("e", lambda event: None, destination=name)
