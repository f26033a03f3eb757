"""``python -m luna.serve``: a WebSocket server for a luna tokenizer (protocol: docs/streaming.md "Server (WebSocket)").

One concept per module (the typed config is :class:`luna.config.ServeConfig`): :mod:`~luna.serving.protocol`
(message schema and validation), :mod:`~luna.serving.session` (per-utterance model state),
:mod:`~luna.serving.admission` (limits, Origin allow-list, token, audio budget), :mod:`~luna.serving.scheduler`
(fair compute across connections), :mod:`~luna.serving.server` (the asyncio server, per-connection tasks),
:mod:`~luna.serving.page` (the browser page at ``/``, files in ``static/``).
"""
