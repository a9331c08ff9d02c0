// An agent's OpenFeature client in Node: evaluates one flag for many targeting keys over OFREP and prints
// one JSON line per key. Input (argv[2], JSON): {"baseUrl", "flag", "defaultValue", "targetingKeys", "token"?,
// "type"?: "boolean" | "string" | "object" (the default)}.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const input = JSON.parse(process.argv[2]);
const headers = input.token ? [['Authorization', `Bearer ${input.token}`]] : [];
await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl: input.baseUrl, headers }));
const client = OpenFeature.getClient();
const evaluate = { boolean: 'getBooleanDetails', string: 'getStringDetails' }[input.type] ?? 'getObjectDetails';
for (const targetingKey of input.targetingKeys) {
  const details = await client[evaluate](input.flag, input.defaultValue, { targetingKey });
  const { value, variant, reason, errorCode } = details;
  console.log(JSON.stringify({ targetingKey, value, variant: variant ?? null, reason, errorCode: errorCode ?? null }));
}
await OpenFeature.close();
