"""A stream's lifecycle end to end, over two MuxProtocols joined in memory (no sockets)."""

from __future__ import annotations

from twisted.internet import error

from test_adapter import Link, Recorder, collecting_factory


def test_lose_connection_while_the_peers_end_waits_behind_a_paused_consumer_still_finishes() -> None:
    """A slow client hangs up after the backend has finished: the stream must not linger.

    The consumer paused the stream, so the peer's last data and FIN wait in the inbox; then the
    protocol calls loseConnection (its consumer is gone and will never resume it).
    """
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    server = accepted[0]
    stream.pauseProducing()
    server.transport.write(b"the last words")
    server.transport.loseWriteConnection()
    link.run()
    assert stream.buffered_inbound == len(b"the last words") and not client.read_closed

    stream.loseConnection()
    link.run()

    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert link.client.streams == {}
    assert bytes(client.received) == b"" and not client.read_closed  # it hung up: nothing more
    assert link.client.budget.held == 0


def test_a_stream_finished_while_another_flushes_is_skipped() -> None:
    """One stream's FIN makes its protocol abort a second stream that has data queued in the
    same flush: the flush goes on with the streams that are left."""
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    first, second = Recorder(), Recorder()
    first_stream = link.client.open_stream(first)
    second_stream = link.client.open_stream(second)
    link.run()
    first.writeConnectionLost = second_stream.abortConnection  # type: ignore[method-assign]
    first_stream.loseWriteConnection()
    second_stream.write(b"never sent")
    link.run()
    assert second.lost is not None and second.lost.check(error.ConnectionAborted)
    assert accepted[0].read_closed
    assert bytes(accepted[1].received) == b""


def test_credit_for_data_dropped_by_lose_connection_reaches_the_peer() -> None:
    """The protocol hangs up with a window's worth parked and its FIN already out: the credit for
    the dropped bytes must be sent, or the peer can never finish writing and send its own FIN."""
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    server = accepted[0]
    server.transport.pauseProducing()
    stream.write(b"x" * 300_000)  # more than the window: the rest waits for credit
    link.run()
    assert stream.buffered_outbound > 0
    server.transport.loseWriteConnection()
    link.run()

    server.transport.loseConnection()  # drops what it parked
    stream.loseWriteConnection()
    link.run()

    assert stream.buffered_outbound == 0
    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert server.lost is not None and server.lost.check(error.ConnectionDone)
    assert "in time" not in server.lost.getErrorMessage()  # a clean close, no time passed


def test_lose_connection_after_our_fin_still_gives_the_peer_only_the_close_timeout() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    stream.loseWriteConnection()
    link.run()
    stream.loseConnection()  # the FIN is out already; the peer never closes its side
    link.run()
    link.clock.advance(link.client.config.stream_close_timeout)
    link.run()
    assert client.lost is not None and "did not close the stream in time" in client.lost.getErrorMessage()
    assert link.client.streams == {}
    assert accepted[0].lost is not None and "reset" in accepted[0].lost.getErrorMessage()
