// The capacity planner's worker thread (plan-service.ts planInWorker): registers tsx (a worker does not inherit the
// parent's loader on Node 20), plans, posts the answer, ends.
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const { answerPlan } = await import('./plan-service.ts');
parentPort.postMessage(answerPlan(workerData));
