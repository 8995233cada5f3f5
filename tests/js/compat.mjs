// The openai SDK for JavaScript against one target (a bare llama-server or slp), for
// tests/test_client_compat.py: `node compat.mjs BASE_URL` prints {case: {ok, shape} | {ok: false, error}}.
// The Python side runs it against both targets and compares: a case that passes on the engine must pass
// through slp and show the same shape (keys, kinds of stream events), answers aside.
import OpenAI from "openai";

const base = process.argv[2];
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "not-needed", maxRetries: 0, timeout: 120_000 });
const MODEL = "slp-orchestra-mini";
const QUESTION = [{ role: "user", content: "What is the capital of France?" }];
const WEATHER = [{ role: "user", content: "What is the weather like in Paris today?" }];
const CITY = {
  type: "object",
  properties: { city: { type: "string", maxLength: 16 } },
  required: ["city"],
  additionalProperties: false,
};
const WEATHER_TOOL = {
  type: "function",
  function: { name: "get_weather", description: "Get the current weather in a city.", parameters: CITY },
};

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const keys = (obj) => Object.keys(obj).sort().join(",");
const chatShape = (reply) => [
  keys(reply),
  reply.choices.map((c) => keys(c)),
  reply.choices.map((c) => keys(c.message)),
  keys(reply.usage ?? {}),
  reply.usage?.prompt_tokens, // the same only if the request reached the engine unchanged
];

function eventShapes(events) {
  const kind = (e) => `${(e.choices ?? []).length}|${e.usage != null}|${keys(e)}`;
  const kinds = events.map(kind);
  return [[...new Set(kinds)].sort(), kinds[0], kinds.at(-1)];
}

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

const cases = {
  async plain() {
    const reply = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 4 });
    check(reply.choices[0].message.content.trim(), "an answer");
    check(reply.usage.completion_tokens > 0 && reply.usage.completion_tokens <= 4, "usage");
    return chatShape(reply);
  },

  async stream_without_usage() {
    const events = await collect(
      await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 6, stream: true }),
    );
    // A reader that takes choices[0] of every event (the crash of issue 14 when slp added a usage event).
    const text = events.map((e) => e.choices[0].delta.content ?? "").join("");
    check(text.trim(), "streamed text");
    check(events.every((e) => e.usage == null), "no usage the client did not ask for");
    return eventShapes(events);
  },

  async stream_with_usage() {
    const events = await collect(
      await client.chat.completions.create({
        model: MODEL, messages: QUESTION, max_tokens: 6, stream: true, stream_options: { include_usage: true },
      }),
    );
    const last = events.at(-1);
    check(last.choices.length === 0 && last.usage.completion_tokens > 0, "the usage event last");
    return eventShapes(events);
  },

  // SmolLM2's chat template describes no tools, so the model answers in text: these show that tools,
  // tool_choice and parallel_tool_calls pass untouched (the same prompt tokens) and the reply parses.
  async tools() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: WEATHER, tools: [WEATHER_TOOL], tool_choice: "auto", parallel_tool_calls: false,
      max_tokens: 6, temperature: 0,
    });
    const message = reply.choices[0].message;
    check(message.content || message.tool_calls?.length, "an answer or a tool call");
    return chatShape(reply);
  },

  async tools_streamed() {
    const runner = client.chat.completions.stream({
      model: MODEL, messages: WEATHER, tools: [WEATHER_TOOL], tool_choice: "auto", max_tokens: 6, temperature: 0,
    });
    const chunks = [];
    runner.on("chunk", (chunk) => chunks.push(chunk));
    const final = await runner.finalChatCompletion();
    const message = final.choices[0].message;
    check(message.content || message.tool_calls?.length, "an answer or a tool call");
    check(chunks.every((c) => c.choices.length > 0), "no event without choices");
    return eventShapes(chunks);
  },

  async json_object() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "Give the capital of France as JSON." }],
      response_format: { type: "json_object" }, max_tokens: 12, temperature: 0,
    });
    const content = reply.choices[0].message.content;
    if (reply.choices[0].finish_reason === "stop") check(typeof JSON.parse(content) === "object", "a JSON object");
    check(content.trimStart().startsWith("{"), "JSON");
    return chatShape(reply);
  },

  async json_schema() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: QUESTION, max_tokens: 48, temperature: 0,
      response_format: { type: "json_schema", json_schema: { name: "city", strict: true, schema: CITY } },
    });
    check(reply.choices[0].finish_reason === "stop", "a whole answer");
    check(typeof JSON.parse(reply.choices[0].message.content).city === "string", "the schema's field");
    return chatShape(reply);
  },

  async logprobs() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: QUESTION, max_tokens: 4, logprobs: true, top_logprobs: 2,
    });
    const content = reply.choices[0].logprobs.content;
    check(content.length > 0 && content.every((item) => item.top_logprobs.length === 2), "top logprobs");
    return keys(content[0]);
  },

  async n_choices() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: QUESTION, max_tokens: 4, n: 2, temperature: 1,
    });
    check(reply.choices.map((c) => c.index).sort().join() === "0,1", "two choices");
    return [keys(reply), reply.choices.length];
  },

  async seed() {
    const ask = () => client.chat.completions.create({
      model: MODEL, messages: QUESTION, max_tokens: 4, seed: 1234, temperature: 1,
    });
    const [a, b] = [await ask(), await ask()];
    check(a.choices[0].message.content === b.choices[0].message.content, "the same seed, the same answer");
    return true;
  },

  async max_completion_tokens() {
    const reply = await client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "Write a long story about a lighthouse." }],
      max_completion_tokens: 3,
    });
    check(reply.usage.completion_tokens === 3 && reply.choices[0].finish_reason === "length", "3 tokens");
    return keys(reply);
  },

  async legacy_completions() {
    const reply = await client.completions.create({
      model: MODEL, prompt: "The capital of France is", max_tokens: 5, logprobs: 2, temperature: 0,
    });
    check(reply.choices[0].text.length > 0, "a completion");
    const events = await collect(
      await client.completions.create({ model: MODEL, prompt: "The capital of France is", max_tokens: 5, stream: true }),
    );
    check(events.map((e) => e.choices[0]?.text ?? "").join("").length > 0, "a streamed completion");
    return [keys(reply), eventShapes(events)];
  },

  async models() {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    check(ids.includes(MODEL), `the model is listed: ${ids}`);
    return true;
  },

  async raw_response_headers() {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages: QUESTION, max_tokens: 2 })
      .withResponse();
    check(response.status === 200 && data.choices.length === 1, "a parsed reply beside the raw response");
    const streamed = await client.chat.completions
      .create({ model: MODEL, messages: QUESTION, max_tokens: 2, stream: true })
      .withResponse();
    await collect(streamed.data);
    return [response.headers.get("content-type").split(";")[0], streamed.response.headers.get("content-type").split(";")[0]];
  },

  async stream_aborted_then_a_new_request() {
    const stream = await client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "Write a long story about a lighthouse." }],
      max_tokens: 48, stream: true, ignore_eos: true,
    });
    let seen = 0;
    for await (const _event of stream) {
      if (++seen === 2) break; // leaving the loop aborts the request
    }
    const started = Date.now();
    const reply = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 4 });
    check(reply.choices[0].message.content !== null && Date.now() - started < 30_000, "served at once");
    return seen;
  },
};

const results = {};
for (const [name, run] of Object.entries(cases)) {
  try {
    results[name] = { ok: true, shape: await run() };
  } catch (error) {
    results[name] = { ok: false, error: String(error?.stack ?? error) };
  }
}
console.log(JSON.stringify(results));
