"""Front-end side: protocol, validation, bytes -> samples, results out; talks to engines only
through `server.engine.wire` messages."""
