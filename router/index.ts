export { routerLogits, top1, topK, type Gating } from './gate.ts';
export { planDispatch, expertCapacity, gatherRows, combineInto, type DispatchPlan, type ExpertBatch } from './dispatch.ts';
export { tokensPerExpert, balancedness } from './stats.ts';
