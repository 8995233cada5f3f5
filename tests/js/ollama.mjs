// The npm `ollama` client's documented calls against slp's Ollama API, for tests/test_ollama_api.py:
// `node ollama.mjs BASE_URL` prints {case: {ok: true} | {ok: false, error}} as its last line.
// The agent has a model store of its own (copy and delete change only it) and embeddings on.
import { Ollama } from "ollama";

const host = process.argv[2];
const ollama = new Ollama({ host });
const MODEL = "slp-orchestra-mini";
const QUESTION = [{ role: "user", content: "What is the capital of France?" }];
const SHORT = { num_predict: 6, temperature: 0, seed: 7 };

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function checkFinal(obj) {
  check(obj.done === true, "done");
  for (const key of ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
    "eval_count", "eval_duration", "done_reason"]) {
    check(obj[key] !== undefined && obj[key] !== null, `${key} present`);
  }
  check(obj.eval_count > 0 && obj.prompt_eval_count > 0, "counts");
}

const cases = {
  async version() {
    const { version } = await ollama.version();
    check(/^\d+\.\d+\.\d+$/.test(version), "a version");
  },
  async list() {
    const { models } = await ollama.list();
    const m = models.find((x) => x.name === "SmolLM2-135M-Instruct-Q4_1");
    check(m && m.details.quantization_level === "Q4_1" && m.size > 0 && m.digest.length === 64, "the default model");
  },
  async show() {
    const shown = await ollama.show({ model: MODEL });
    check(shown.template.includes("<|im_start|>") && shown.model_info["general.architecture"] === "llama", "facts");
    check(shown.capabilities.includes("completion"), "capabilities");
  },
  async ps() {
    await ollama.chat({ model: MODEL, messages: QUESTION, options: { num_predict: 1 } });
    const { models } = await ollama.ps();
    check(models.some((m) => m.name === "SmolLM2-135M-Instruct-Q4_1" && m.size > 0), "loaded");
  },
  async chat() {
    const reply = await ollama.chat({ model: MODEL, messages: QUESTION, options: SHORT });
    check(reply.message.role === "assistant" && reply.message.content.length > 0, "an answer");
    checkFinal(reply);
  },
  async chat_stream() {
    const whole = await ollama.chat({ model: MODEL, messages: QUESTION, options: SHORT });
    let text = "";
    let last;
    for await (const part of await ollama.chat({ model: MODEL, messages: QUESTION, options: SHORT, stream: true })) {
      text += part.message.content;
      last = part;
    }
    check(text === whole.message.content, `streamed text ${JSON.stringify(text)} is the whole answer`);
    checkFinal(last);
  },
  async generate() {
    const reply = await ollama.generate({ model: MODEL, prompt: "The capital of France is", raw: true, options: SHORT });
    check(reply.response.length > 0, "a response");
    checkFinal(reply);
  },
  async generate_stream() {
    let n = 0;
    let last;
    for await (const part of await ollama.generate({ model: MODEL, prompt: "Hi", options: SHORT, stream: true })) {
      n += 1;
      last = part;
    }
    check(n > 2, "several objects");
    checkFinal(last);
  },
  async embed() {
    const { embeddings } = await ollama.embed({ model: MODEL, input: ["Paris", "Bananas"] });
    check(embeddings.length === 2 && embeddings[0].length === 576, "two vectors of the model's width");
    const norm = Math.sqrt(embeddings[0].reduce((s, x) => s + x * x, 0));
    check(Math.abs(norm - 1) < 1e-3, "normalized");
  },
  async format() {
    const schema = { type: "object", properties: { city: { type: "string", maxLength: 12 } }, required: ["city"] };
    const reply = await ollama.generate({
      model: MODEL, prompt: "The best city in France, as JSON:", raw: true, format: schema,
      options: { num_predict: 8, temperature: 0 },
    });
    check(reply.response.replace(/\s/g, "").startsWith('{"city":"'), `JSON that follows the schema: ${reply.response}`);
  },
  async tools() {
    const tool = {
      type: "function",
      function: { name: "get_weather", description: "Weather in a city.",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
    };
    const reply = await ollama.chat({ model: MODEL, messages: QUESTION, tools: [tool], options: SHORT });
    check(reply.done && (reply.message.content.length > 0 || (reply.message.tool_calls ?? []).length > 0), "answered");
  },
  async pull() {
    const steps = [];
    for await (const step of await ollama.pull({ model: MODEL, stream: true })) steps.push(step.status);
    check(steps[0] === "pulling manifest" && steps.at(-1) === "success", `steps ${steps}`);
  },
  async copy_delete() {
    await ollama.copy({ source: MODEL, destination: "js-copy" });
    check((await ollama.list()).models.some((m) => m.name === "js-copy"), "copied");
    await ollama.delete({ model: "js-copy" });
    check(!(await ollama.list()).models.some((m) => m.name === "js-copy"), "deleted");
    let status = 0;
    try {
      await ollama.delete({ model: "js-copy" });
    } catch (err) {
      status = err.status_code;
    }
    check(status === 404, `a second delete is a 404 (got ${status})`);
  },
  async keep_alive_0() {
    await ollama.generate({ model: MODEL, prompt: "", keep_alive: 0 });
    const { models } = await ollama.ps();
    check(!models.some((m) => m.name === "SmolLM2-135M-Instruct-Q4_1"), "unloaded");
    await ollama.chat({ model: MODEL, messages: QUESTION, options: { num_predict: 1 } }); // loads it again
  },
};

const results = {};
for (const [name, run] of Object.entries(cases)) {
  try {
    await run();
    results[name] = { ok: true };
  } catch (err) {
    results[name] = { ok: false, error: String(err && err.stack ? err.stack : err) };
  }
}
console.log(JSON.stringify(results));
