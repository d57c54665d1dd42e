/**
 * `switchyard inspect`: what a checkpoint is and whether it fits this machine, from its config.json alone — before
 * loading gigabytes. Pure: the caller reads the file and the machine's memory.
 *
 * Parameters come from the tensors the family's description implies (package-format.ts `expectedTensors`, after
 * architectures.ts normalised the config): total, and active per token = total − layers × (experts − k) × one
 * expert. Memory is what the gateway holds: every weight as float32 (bf16/f16 checkpoints are widened at load) for
 * the trunk, the experts as the chosen kernel stores them, and the KV cache in float32.
 */
import { z } from 'zod';
import { architectureOf, supportedArchitectures } from '../format/architectures.ts';
import { configRuleProblems, expectedTensors, modelConfigSchema, type ModelConfig } from '../format/package-format.ts';

// Sizes are all inspect needs: the end-of-sequence id may be anything here (public configs also use a list).
const sizesSchema = modelConfigSchema.extend({ eos_token_id: z.unknown().optional() });

/** Most weight matrices inspect lists (layers × experts × 3 and the rest): far beyond any public checkpoint. */
const MAX_MATRICES = 1_000_000;

/** Bytes per expert weight as each kernel holds it (int8: 8-bit codes + a scale per column; int4: 4-bit codes in
 * blocks of 32 with a float scale and 4-bit zero point each). Per-column scales are a rounding error at these sizes. */
export const KERNEL_BYTES_PER_WEIGHT: Record<'dense' | 'int8' | 'int4', number> = { dense: 4, int8: 1, int4: (16 + 4 + 0.5) / 32 };

/** What must fit, besides the weights: this share of the machine's memory is left for everything else. */
export const MEMORY_HEADROOM = 0.2;

export interface KernelFit {
  kernel: 'dense' | 'int8' | 'int4';
  /** Expert weights as that kernel holds them, bytes. */
  expertBytes: number;
  /** Trunk (f32) + experts + one full-context sequence's KV cache, bytes. */
  totalBytes: number;
  fits: boolean;
}

export interface InspectReport {
  modelType: string;
  architecture: string;
  layers: number;
  experts: number;
  expertsPerToken: number;
  sharedExpert: boolean;
  groupedQueryAttention: boolean;
  parameters: { total: number; active: number; experts: number; trunk: number };
  /** KV cache per token (all layers, keys and values, float32), bytes; and at the full context. */
  kvBytesPerToken: number;
  kvBytesFullContext: number;
  contextLength: number;
  machineBytes: number;
  fits: KernelFit[];
}

export class InspectError extends Error {
  override readonly name = 'InspectError';
}

/**
 * Inspects a checkpoint's config.json (parsed JSON) against `machineBytes` of memory. Throws InspectError for a
 * model_type the gateway does not serve (naming those it does) or a config the family's schema refuses.
 */
export function inspectConfig(raw: Record<string, unknown>, machineBytes: number): InspectReport {
  const arch = architectureOf(raw.model_type);
  if (!arch) throw new InspectError(`model_type ${JSON.stringify(raw.model_type) ?? 'missing'} is not served; the gateway serves ${supportedArchitectures()}`);
  const parsed = sizesSchema.safeParse(arch.normalizeConfig(raw));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InspectError(`config.json: ${arch.configKey(String(issue.path[0] ?? '(root)'))}: ${issue.message}`);
  }
  const c = parsed.data as ModelConfig;
  const rules = configRuleProblems(c);
  if (rules.length > 0) throw new InspectError(`config.json: ${rules.map((r) => r.message).join('; ')}`);
  const matrices = c.num_hidden_layers * (c.num_experts * 3 + 8);
  if (matrices > MAX_MATRICES) {
    throw new InspectError(`config.json: ${c.num_hidden_layers} layers × ${c.num_experts} experts is ${matrices.toExponential(1)} weight matrices, far beyond any checkpoint (limit ${MAX_MATRICES}); check num_hidden_layers and ${arch.configKey('num_experts')}`);
  }
  const isExpert = /\.mlp\.experts\.\d+\./;
  let trunk = 0;
  let experts = 0;
  for (const [name, shape] of expectedTensors(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (isExpert.test(name)) experts += n;
    else trunk += n;
  }
  const perExpert = 3 * c.hidden_size * c.intermediate_size;
  const total = trunk + experts;
  const active = total - c.num_hidden_layers * (c.num_experts - c.num_experts_per_tok) * perExpert;
  const kvDim = (c.hidden_size / c.num_attention_heads) * c.num_key_value_heads;
  const kvBytesPerToken = c.num_hidden_layers * 2 * kvDim * 4;
  const kvBytesFullContext = kvBytesPerToken * c.max_position_embeddings;
  const budget = machineBytes * (1 - MEMORY_HEADROOM);
  const fits = (['dense', 'int8', 'int4'] as const).map((kernel): KernelFit => {
    const expertBytes = experts * KERNEL_BYTES_PER_WEIGHT[kernel];
    const totalBytes = trunk * 4 + expertBytes + kvBytesFullContext;
    return { kernel, expertBytes, totalBytes, fits: totalBytes <= budget };
  });
  return {
    modelType: c.model_type, architecture: arch.label, layers: c.num_hidden_layers, experts: c.num_experts,
    expertsPerToken: c.num_experts_per_tok, sharedExpert: c.shared_expert_intermediate_size > 0,
    groupedQueryAttention: c.num_key_value_heads < c.num_attention_heads,
    parameters: { total, active, experts, trunk }, kvBytesPerToken, kvBytesFullContext, contextLength: c.max_position_embeddings,
    machineBytes, fits,
  };
}

const billions = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : `${(n / 1e6).toFixed(1)} M`);
const gib = (bytes: number) => (bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`);

/** The report as the CLI prints it. */
export function formatInspect(r: InspectReport): string {
  const lines = [
    `architecture: ${r.architecture} (model_type ${r.modelType}), ${r.layers} layers, top-${r.expertsPerToken} of ${r.experts} experts`
      + `${r.sharedExpert ? ' + a shared expert' : ''}${r.groupedQueryAttention ? ', grouped-query attention' : ''}`,
    `parameters: ${billions(r.parameters.total)} total, ${billions(r.parameters.active)} active per token (${(100 * r.parameters.active / r.parameters.total).toFixed(1)} %); experts ${billions(r.parameters.experts)}, trunk ${billions(r.parameters.trunk)}`,
    `KV cache (float32): ${(r.kvBytesPerToken / 1024).toFixed(0)} KiB per token, ${gib(r.kvBytesFullContext)} for one sequence at the full ${r.contextLength}-token context`,
    `this machine: ${gib(r.machineBytes)} of memory; ${Math.round((1 - MEMORY_HEADROOM) * 100)} % may go to the model`,
    ...r.fits.map((f) => `  experts.kernel ${f.kernel.padEnd(5)}: experts ${gib(f.expertBytes)}, with the float32 trunk and one full-context KV cache ${gib(f.totalBytes)}: ${f.fits ? 'fits' : 'does not fit'}`),
  ];
  const best = r.fits.find((f) => f.fits);
  lines.push(best
    ? `verdict: fits with experts.kernel '${best.kernel}'${best.kernel === 'dense' ? '' : ' (quantized: outputs change slightly)'}`
    : 'verdict: does not fit this machine with any expert kernel');
  return lines.join('\n');
}
