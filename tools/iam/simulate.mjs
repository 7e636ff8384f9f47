// Evaluates IAM requests with @cloud-copilot/iam-simulate, offline.
// stdin: a JSON array of Simulation objects (see the package's README); stdout: a JSON array, one result each:
// {"result": "Allowed" | "ExplicitlyDenied" | "ImplicitlyDenied" | "Error", "policies": {identity, resource,
// endpoint: each policy type's own result}, "errors": validation errors, if any}.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const simulations = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const out = []
for (const simulation of simulations) {
  const response = await runSimulation(simulation, {})
  if (response.resultType === 'error') {
    out.push({ result: 'Error', errors: response.errors })
    continue
  }
  const analysis = response.resultType === 'single' ? response.result.analysis : response.results[0]?.analysis
  out.push({
    result: response.overallResult,
    policies: {
      identity: analysis?.identityAnalysis?.result,
      resource: analysis?.resourceAnalysis?.result,
      endpoint: analysis?.endpointAnalysis?.result,
    },
  })
}
process.stdout.write(JSON.stringify(out))
