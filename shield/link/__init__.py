"""What shield says on top of yamux: the connector's announcement and the stream-open header."""
