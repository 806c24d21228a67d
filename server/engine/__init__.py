"""The engine: one process per device owning backends, state slabs, the stream planner, the
device worker and the batch path. It never touches a socket from a client; front-ends talk to it
through `server.engine.wire` messages (in-process calls or pyzmq)."""
