"""Bidi stream: server ends the call while the client heartbeats. Count the client's codes."""
import asyncio, sys, collections, grpc

MODE = sys.argv[1]          # server variant
CLIENT = sys.argv[2]        # blind | polite
N = int(sys.argv[3])
ident = lambda b: b

async def handler_cancel(request_iterator, context):
    # like today's cloud: reader + writer tasks, cancel them, abort
    async def reader():
        async for _ in request_iterator: pass
    async def writer():
        while True:
            await context.write(b"hb"); await asyncio.sleep(0.05)
    ts = [asyncio.ensure_future(reader()), asyncio.ensure_future(writer())]
    await asyncio.sleep(0.3)
    for t in ts: t.cancel()
    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no feedback within 3 s")

async def handler_drain(request_iterator, context):
    # goodbye in-band, stop writing, read until the client half-closes (or grace), then status
    async def reader():
        async for _ in request_iterator: pass
    rt = asyncio.ensure_future(reader())
    for _ in range(6):
        await context.write(b"hb"); await asyncio.sleep(0.05)
    await context.write(b"bye")
    await asyncio.wait([rt], timeout=1.0)
    if not rt.done(): rt.cancel()
    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no feedback within 3 s")

async def main():
    h = {"cancel": handler_cancel, "drain": handler_drain}[MODE]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {
        "S": grpc.stream_stream_rpc_method_handler(h, ident, ident)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        for i in range(N):
            call = ch.stream_stream("/t.T/S", request_serializer=ident, response_deserializer=ident)(timeout=10)
            stop = asyncio.Event()
            async def hb():
                while not stop.is_set():
                    await call.write(b"h"); await asyncio.sleep(0.01)
                await call.done_writing()
            t = asyncio.ensure_future(hb())
            try:
                while (m := await call.read()) is not grpc.aio.EOF:
                    if m == b"bye" and CLIENT == "polite": stop.set()
                code = await call.code()
            except grpc.aio.AioRpcError as e:
                code = e.code()
            t.cancel()
            codes[code.name] += 1
    print(MODE, CLIENT, dict(codes))
    await server.stop(0)
asyncio.run(main())
