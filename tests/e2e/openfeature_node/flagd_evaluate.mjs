// flagd's own evaluator for JavaScript (@openfeature/flagd-core) on a flagd flag file: prints, as one JSON
// object, each flag's variant for each targeting key. Input (argv[2], JSON): {"file", "flags": {key: default},
// "targetingKeys"}.
import { readFileSync } from 'node:fs';
import { FlagdCore } from '@openfeature/flagd-core';

const input = JSON.parse(process.argv[2]);
const core = new FlagdCore();
core.setConfigurations(readFileSync(input.file, 'utf8'));
const resolvers = {
  boolean: core.resolveBooleanEvaluation.bind(core),
  string: core.resolveStringEvaluation.bind(core),
  number: core.resolveNumberEvaluation.bind(core),
  object: core.resolveObjectEvaluation.bind(core),
};
const kind = (value) => (value !== null && typeof value === 'object' ? 'object' : typeof value);
const result = {};
for (const [flag, defaultValue] of Object.entries(input.flags)) {
  const resolve = resolvers[kind(defaultValue)];
  result[flag] = input.targetingKeys.map((targetingKey) => {
    const { value, variant, reason } = resolve(flag, defaultValue, { targetingKey });
    return { value, variant: variant ?? null, reason };
  });
}
console.log(JSON.stringify(result));
