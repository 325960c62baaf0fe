"""A sampled token's output and when a request ends, for `Scheduler.update_from_output`
and `Scheduler._finish`: the token's text through the request's detokenizer, the stop
decision, and the record of a finish. They write nothing but the detokenizer's state;
the scheduler appends the token and ends the request."""

from __future__ import annotations

from server.engine.request import EngineRequest, FinishedRequest, FinishReason, RequestOutput


def token_output(request: EngineRequest, token: int, max_model_len: int) -> RequestOutput:
    """The output of `token`, just appended to `request`'s output: its text (held back
    while it may start a stop string; none for a stop token unless
    `include_stop_str_in_output`) and the finish reason if the request ends with it."""
    may_stop = len(request.output_token_ids) >= request.min_tokens
    if may_stop and token in request.stop_token_ids and not request.include_stop_str_in_output:
        text = ""  # a stop token's text is not shown (vLLM)
    else:
        text = request.detokenizer.feed([token], check_stop=may_stop)
    reason = stop_reason(request, token, may_stop, max_model_len)
    if reason is not None:
        text += request.detokenizer.flush()  # nothing after a stop string
    return RequestOutput(
        request_id=request.request_id,
        new_token_ids=[token],
        new_text=text,
        num_prompt_tokens=len(request.prompt_token_ids),
        num_cached_tokens=request.num_cached_tokens or 0,
        num_output_tokens=len(request.output_token_ids),
        finish_reason=reason,
    )


def stop_reason(
    request: EngineRequest, token: int, may_stop: bool, max_model_len: int
) -> FinishReason | None:
    """Why `request` ends after appending `token` (None: it goes on). `may_stop`: it has
    `min_tokens` already, so a stop token or stop string counts."""
    if may_stop and (token in request.stop_token_ids or request.detokenizer.done):
        return FinishReason.STOP
    if len(request.output_token_ids) >= request.max_tokens or request.num_tokens >= max_model_len:
        return FinishReason.LENGTH
    return None


def finished_record(request: EngineRequest, reason: FinishReason, now: float) -> FinishedRequest:
    """The finish of `request` at `now` (perf_counter), with vLLM's phase times."""
    scheduled, first, last = (
        request.scheduled_time,
        request.first_token_time,
        request.last_token_time,
    )
    return FinishedRequest(
        request.request_id,
        reason,
        now - request.arrival_time,
        num_prompt_tokens=len(request.prompt_token_ids),
        num_output_tokens=len(request.output_token_ids),
        queue_seconds=(scheduled if scheduled is not None else now) - request.arrival_time,
        prefill_seconds=first - scheduled if first is not None and scheduled is not None else 0.0,
        decode_seconds=last - first if last is not None and first is not None else 0.0,
        inference_seconds=last - scheduled if last is not None and scheduled is not None else 0.0,
    )
