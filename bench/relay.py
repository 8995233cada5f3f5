"""A logic-free relay: aiohttp's server and slp's own engine client, and nothing of slp in between.

`python -m bench.relay PORT ENGINE_PORT ENGINE_KEY` forwards POST /v1/chat/completions to a llama-server
as it came and passes the reply back (streams chunk by chunk). `bench.request_path` measures it beside
the agent: the difference is what slp's own work costs; the relay's figure is the floor that the
server and client libraries and the extra hop set on this machine.
"""

from __future__ import annotations

import sys

from aiohttp import web

from slp.server.engine_client import EngineClient


def make_app(engine_port: int, key: str) -> web.Application:
    client = EngineClient(max_connections=8)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with await client.post("127.0.0.1", engine_port, request.path, body, headers) as upstream:
            if upstream.headers.get("transfer-encoding") != "chunked":
                return web.Response(body=await upstream.read(), status=upstream.status,
                                    content_type=upstream.content_type)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    return app


if __name__ == "__main__":
    import uvloop

    port, engine_port, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    web.run_app(make_app(engine_port, key), host="127.0.0.1", port=port, print=None, loop=uvloop.new_event_loop())
