"""Serving a side-task bundle over HTTP on Ray Serve: every task of the bundle behind one endpoint, one encoder pass
per batch of requests, whatever tasks each request asks for.

Start it with ``mdpd-peft serve BUNDLE --encoder PATH_OR_ID`` (``mdpd_peft.cli``). The modules import Ray and FastAPI
(the ``serve`` extra: ``pip install "mdpd-peft[serve]"``); ``import mdpd_peft`` does not import them.

- ``settings``: the deployment's limits and batching (``ServerSettings``), with their defaults;
- ``schemas``: the request and response bodies (pydantic), which ``/docs`` shows;
- ``inputs``: the checks of a request against the bundle, and decoding of base64 images;
- ``app``: the FastAPI app, the Ray Serve deployment (``SideTaskServer``) and ``build_app``;
- ``runner``: start or join Ray, run the app, shut down cleanly on SIGINT / SIGTERM.
"""
