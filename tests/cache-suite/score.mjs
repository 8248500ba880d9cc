// Scores a run of the HTTP cache test suite the way cache-tests.fyi does: a test passes only if its
// dependencies pass too. Usage: node score.mjs RESULTS.json
// Prints {"required":[passed,total],"optimal":[passed,total],"failures":[...]} for applicable tests
// (browser-only ones left out), the surrogate tests included as the suite's CLI runs them.
import fs from 'fs'
import { createRequire } from 'module'
import path from 'path'

const require = createRequire(import.meta.url)
const root = path.dirname(require.resolve('http-cache-tests/package.json'))
const { default: tests } = await import(path.join(root, 'tests/index.mjs'))
const { default: surrogate } = await import(path.join(root, 'tests/surrogate-control.mjs'))
tests.push(surrogate)
const display = await import(path.join(root, 'lib/display.mjs'))
const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const score = { required: [0, 0], optimal: [0, 0], failures: [] }
for (const suite of tests) {
  for (const test of suite.tests) {
    const kind = test.kind || 'required'
    if (!(kind in score) || test.browser_only) continue
    const verdict = display.determineTestResult(tests, test.id, results)
    score[kind][1]++
    if (verdict[2] === '✅') {
      score[kind][0]++
    } else {
      score.failures.push({ id: test.id, kind, result: results[test.id] === undefined ? 'not run' : results[test.id] })
    }
  }
}
console.log(JSON.stringify(score))
