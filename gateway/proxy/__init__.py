"""Forwarding OpenAI completions to an engine and normalising what comes back.

The serving hot path: resolve the tenant's model, lease an engine with the adapter
resident, send the request, and turn the engine's answer into OpenAI's schema — chunk by
chunk for streams, never buffering them. Every request ends as one interaction record.
How the normalised answer is sent is a `Presenter`: as it is for chat and text completions,
as Responses objects and events for the Responses API (gateway.responses), which answers
its requests on this same path.

- `forwarding`: a request from arrival to answer (`complete`), and rate limits (`admit`)
- `call`: the request's state as it passes the steps (`CompletionCall`), and its record's end
- `engine_call`: leasing an engine and opening its response
- `finishing`: an answer that came whole; `streaming`: one that comes chunk by chunk
- `presenters`: how an answer is sent; `errors`: how a failure is; `disconnect`: a client gone
"""

from gateway.proxy.call import BatchContext, Call
from gateway.proxy.disconnect import ClientDisconnected, until_disconnect
from gateway.proxy.errors import CLIENT_CLOSED, INTERACTION_HEADER
from gateway.proxy.forwarding import admit, complete
from gateway.proxy.presenters import Passthrough, Presenter
from gateway.proxy.streaming import _sse_data

__all__ = [
    "CLIENT_CLOSED",
    "INTERACTION_HEADER",
    "BatchContext",
    "Call",
    "ClientDisconnected",
    "Passthrough",
    "Presenter",
    "_sse_data",
    "admit",
    "complete",
    "until_disconnect",
]
