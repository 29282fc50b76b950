"""One JSON POST of committed readings to a webhook (stdlib urllib). Apart from publish.py because
urllib.request (with http.client and email) costs a process ~10 ms CPU to import: only a task that
posts loads it, not every worker at start (validation imports every task module)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from utilitarian.amr.model import MeterReading
from utilitarian.amr.publish import reading_message
from utilitarian.log import url_host


@dataclass(frozen=True)
class WebhookResult:
    ok: bool
    status: int | None
    retryable: bool
    detail: str


class _Redirected(Exception):
    def __init__(self, code: int, location: str, why: str):
        super().__init__(why)
        self.code = code
        self.location = location
        self.why = why


class _SameMethodRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows 301/302/303 after a POST by sending a GET without the body, and a 200 for
    that GET would count as delivered (issue 11: the batch was dropped). Here only 307/308, which
    keep method and body by definition (RFC 9110 15.4), are followed, with the same body and never
    from https to http; any other redirect ends the POST as a failure that says where it pointed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if code in (307, 308):
            if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
                fp.close()
                raise _Redirected(code, newurl, "would leave https; not followed")
            return urllib.request.Request(newurl, data=req.data, method=req.get_method(), headers=dict(req.headers),
                                          origin_req_host=req.origin_req_host, unverifiable=True)
        fp.close()
        raise _Redirected(code, newurl, "a POST is never re-sent as a GET without its body; "
                                        "set amr.publish.webhook_url to the new address")


_OPENER = urllib.request.build_opener(_SameMethodRedirects)


def post_webhook(url: str, readings: Sequence[MeterReading], *, id_type: str, timeout: float) -> WebhookResult:
    """One POST of `{"readings": [...]}`. 2xx = ok; 408, 429 and 5xx and network errors are worth a
    retry; other 4xx mean the receiver refuses this payload and never will accept it; a redirect
    other than 307/308 is a failure too (see _SameMethodRedirects), not worth a retry."""
    body = json.dumps({"readings": [reading_message(r, id_type) for r in readings]}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "utilitarian-amr"})
    where = url_host(url)  # the URL may carry a token: log only where
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            if not 200 <= response.status < 300:  # a 1xx/3xx that urllib handed back as it is
                return WebhookResult(False, response.status, False, f"{where}: unexpected HTTP {response.status}")
            return WebhookResult(True, response.status, False, f"{where}: {response.status}")
    except _Redirected as exc:
        # host only: a webhook's path or query often carries its token
        return WebhookResult(False, exc.code, False,
                             f"{where}: HTTP {exc.code} redirect to {url_host(exc.location)}: {exc.why}")
    except urllib.error.HTTPError as exc:
        retryable = exc.code in (408, 429) or exc.code >= 500
        return WebhookResult(False, exc.code, retryable, f"{where}: HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return WebhookResult(False, None, True, f"{where}: {reason}")
