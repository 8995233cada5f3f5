// The seed's JavaScript example, verbatim except for the base URL (the test agent's port).
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.SLP_BASE_URL ?? "http://127.0.0.1:38540/v1",
  apiKey: "not-needed",
});

const response = await client.chat.completions.create({
  model: "slp-orchestra-mini",
  messages: [
    { role: "user", content: "What is the capital of France?" },
  ],
});

console.log(response.choices[0].message.content);
