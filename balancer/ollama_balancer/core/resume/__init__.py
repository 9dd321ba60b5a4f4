"""Resume, don't restart: continuing a generation whose slot was taken back (pure).

When the scheduler preempts a request that is already generating, the balancer keeps what
it relayed, sends the rest of the work upstream as a *continuation* (the original request
plus the partial answer, on the same pod when it is free so that the slot's prompt cache
serves it), and relays the continuation so that the client's stream simply goes on.  This
package holds the pure part of that, one module per job:

* :mod:`.partial` — :func:`partial_of`: what was relayed (text, tokens, identity, obstacles);
* :mod:`.continuation` — :func:`resumable` (asked before lending a reserved slot),
  :func:`continuation` (the next attempt's body), :func:`streamed` (a first attempt
  streamed for a client that asked for one JSON answer);
* :mod:`.stitch` — :func:`stitcher`: the continuation's bytes, rewritten for the client;
* :mod:`.assemble` — :func:`assemble`: a complete internal stream as Ollama's
  non-streamed answer;
* :mod:`.dialects` and :mod:`.frames` — the four dialects, the obstacles, the framing.

**What resumes.**  Ollama continues a trailing ``assistant`` message on ``/api/chat``:
its template renders that message without closing the turn, and the model goes on from
the last token.  ``/v1/chat/completions`` and ``/v1/messages`` become that same chat
inside Ollama, so they resume too; ``/api/generate`` resumes in ``raw`` mode only, where
the prompt is the model's input as sent and the partial answer is appended to it.
Streamed requests are stitched; non-streamed ones are sent upstream as streams when they
might be preempted, and assembled from the (stitched) stream when it ends.

**What does not, and why** (:class:`Obstacle`):

* non-raw ``/api/generate``, ``/v1/completions`` and any ``suffix`` — the prompt goes
  through a template the balancer cannot see, so there is nowhere to put the partial
  answer; ``/v1/responses``, embeddings and everything else have no continuation at all;
* a model whose chat template closes a trailing assistant turn instead of continuing it
  (the scheduler says so: ``resumable(..., continues=False)``) — its continuation would
  be a second answer glued to the first, so its long work gets no lent slot;
* thinking (asked for, or the default of a thinking model) — templates drop or reshape a
  trailing assistant message's thinking, so the continuation would not see its own
  reasoning; once thinking shows up in a stream, that stream is not continued either;
* a tool call already emitted — what comes after a call is not plain text to extend
  (tools merely offered are fine: Ollama sends a call whole, never half of one);
* a JSON ``format`` or schema — its grammar constrains the generated tokens from the
  first one, so a continuation would begin a second document after the partial one;
* OpenAI ``n`` > 1, and a stream that already ended (nothing left to do).

**How the numbers add up.**  Tokens already relayed are counted as content pieces
(Ollama streams one frame per token).  The continuation's limits (``num_predict``,
``max_tokens``, ``max_completion_tokens``) are reduced by them.  In the stitched stream:

* native final line: ``eval_count`` = tokens relayed + the continuation's;
  ``prompt_eval_count`` = the original prompt's: the count reported earlier if any, else
  the continuation's minus the tokens relayed (its prompt holds the partial answer), never
  negative; ``prompt_eval_duration`` and ``eval_duration`` = the earlier attempts' (as
  measured by the shell, see :class:`Spent`; the partial answer's tokens at the
  continuation's rate when not) + the continuation's; ``load_duration`` = the first
  attempt's when known, else the continuation's; ``total_duration`` = the wall time since
  the request arrived;
* OpenAI usage: ``completion_tokens`` = relayed + the continuation's, ``prompt_tokens``
  the original prompt's as above, ``total_tokens`` their sum;
* Anthropic ``message_delta``: ``output_tokens`` summed the same way, ``input_tokens``
  the original prompt's.

A second preemption is the same operation again: the partial answer is read from all the
chunks the client received (the first attempt's and the stitched ones), so it spans both
attempts under the first one's identity.

**Known seams.**  A stop sequence split across the seam is not seen by Ollama (each
attempt matches only its own output); a retokenised partial answer may count a token or
two differently from the first attempt; the relay must cut upstream at a frame boundary
(:attr:`Partial.dangling` is 0), because a half frame the client holds cannot be repaired.
"""

from __future__ import annotations

from .assemble import Assembled, IncompleteStream, assemble
from .continuation import continuation, resumable, streamed
from .dialects import Dialect, NotResumable, Obstacle, Verdict, dialect_of
from .partial import ChunkIdentity, MessageIdentity, Partial, partial_of
from .stitch import METRICS, Spent, Stitcher, stitcher

__all__ = [
    "METRICS",
    "Assembled",
    "ChunkIdentity",
    "Dialect",
    "IncompleteStream",
    "MessageIdentity",
    "NotResumable",
    "Obstacle",
    "Partial",
    "Spent",
    "Stitcher",
    "Verdict",
    "assemble",
    "continuation",
    "dialect_of",
    "partial_of",
    "resumable",
    "stitcher",
    "streamed",
]
