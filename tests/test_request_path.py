"""Fast tests of the request path's shortcuts: each one must give exactly what the long way gives.

- `plainly_valid_chat` accepts a chat without building the pydantic model; it must never accept what
  the model refuses (hypothesis draws bodies near the edges of every field it checks).
- `StreamTail` keeps a stream's end as chunk references; the final event must stay whole.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slp.server.proxy import StreamTail, _last_event
from slp.server.schemas import ChatCompletionRequest, plainly_valid_chat, validation_context

EDGY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 65), max_value=1 << 65),
    st.sampled_from([0, 1, -1, 2, (1 << 31) - 1, 1 << 31, (1 << 63), -(1 << 63) - 1, (1 << 64) - 1, 1 << 64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 1.0000001, -0.0, 2.0, 3.5e38]),
    st.text(max_size=5), st.text(min_size=255, max_size=258),
    st.lists(st.text(max_size=3), max_size=3), st.lists(st.integers(), max_size=2),
    st.just(["x"] * 257), st.dictionaries(st.sampled_from(["include_usage", "other"]), st.booleans() | st.none()),
)
NUMBER = st.one_of(st.integers(min_value=-3, max_value=3), st.floats(min_value=-0.5, max_value=2.5))
NEAR = {  # each field's values around its limits, and anything at all
    "model": st.one_of(st.none(), st.text(max_size=3), st.text(min_size=255, max_size=258)),
    "stream": st.booleans(),
    "max_tokens": st.sampled_from([-2, -1, 0, 1, (1 << 31) - 1, 1 << 31]),
    "max_completion_tokens": st.sampled_from([-2, -1, 5, (1 << 31) - 1, 1 << 31]),
    "temperature": st.one_of(NUMBER, st.sampled_from([3.4028234663852886e38, 3.5e38, float("nan")])),
    "top_p": NUMBER, "top_k": st.integers(min_value=-2, max_value=3), "min_p": NUMBER,
    "seed": st.sampled_from([-(1 << 63), -(1 << 63) - 1, 0, (1 << 64) - 1, 1 << 64]),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=2), max_size=3), st.just(["x"] * 257)),
    "stream_options": st.dictionaries(st.sampled_from(["include_usage", "other"]), st.booleans() | st.none()),
    "unknown_field": st.booleans(),
}
FIELD = st.sampled_from(sorted(NEAR)).flatmap(lambda name: st.tuples(st.just(name), st.one_of(NEAR[name], NEAR[name], NEAR[name], EDGY)))
ROLE = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot", ""])
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": st.text(max_size=5)}),
    st.fixed_dictionaries({"role": ROLE, "content": st.one_of(st.text(max_size=5), st.none(), st.integers())},
                          optional={"name": st.none() | st.text(max_size=3)}),
    EDGY)
PLAIN = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=3)}),
                 min_size=1, max_size=2)
MESSAGES = st.one_of(PLAIN, PLAIN, PLAIN, st.lists(MESSAGE, min_size=1, max_size=3), st.lists(MESSAGE, max_size=3), EDGY)


def model_accepts(body: dict) -> bool:
    context = validation_context(False)
    try:
        ChatCompletionRequest.model_validate(body, context=context)
    except ValueError:
        return False
    return not context["unknown"]


@settings(max_examples=600, deadline=None)
@given(fields=st.lists(FIELD, max_size=3), messages=MESSAGES)
def test_the_fast_check_never_accepts_what_the_model_refuses(fields, messages):
    body = {"messages": messages, **dict(fields)}
    if plainly_valid_chat(body):
        assert model_accepts(body), body


def test_the_fast_check_takes_the_common_requests():
    """So the shortcut is really taken: the SDKs' everyday chats pass it."""
    chat = {"model": "slp-orchestra-mini", "messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "hi"}]}
    for extra in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}},
                  {"max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 42, "stop": ["\n"]}):
        assert plainly_valid_chat({**chat, **extra}) and model_accepts({**chat, **extra}), extra


def test_the_stream_tail_keeps_the_final_event_whole_and_stays_bounded():
    tail = StreamTail(keep=100)
    for i in range(1000):
        tail.add(b'data: {"n":%d}\n\n' % i)
    assert tail.size < 200, "only the last chunks are kept"
    assert tail.data().startswith(b"data: "), "from an event's start"
    huge = b'data: {"final":"' + b"x" * 1000 + b'"}\n\n'
    for part in (huge[:400], huge[400:800], huge[800:]):  # one long event in three chunks
        tail.add(part)
    tail.add(b"data: [DONE]\n\n")
    data = tail.data()
    assert huge in data and _last_event(data) == b"data: [DONE]"

    everything = StreamTail(keep=None)
    for i in range(50):
        everything.add(b"data: %d\n\n" % i)
    assert everything.data() == b"".join(b"data: %d\n\n" % i for i in range(50))
