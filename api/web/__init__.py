"""The web page at ``/``: a static page (no build step, no CDN) that watches and drives the
server through its own API: the job list, job details and outputs, submit forms built from
``/openapi.json``, and the server's health."""
