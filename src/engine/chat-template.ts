/** Chat prompts rendered with the package's Jinja chat template (tokenizer_config.json), as transformers does. */
import { Template } from '@huggingface/jinja';
import { InvalidRequestError, type ChatMessage } from './types.ts';

export class ChatTemplate {
  private readonly template: Template | null;

  constructor(private readonly tokenizerConfig: { chat_template?: string; bos_token?: string; eos_token?: string }) {
    this.template = tokenizerConfig.chat_template ? new Template(tokenizerConfig.chat_template) : null;
  }

  render(messages: ChatMessage[]): string {
    if (!this.template) throw new InvalidRequestError('this model package has no chat_template; use /v1/completions or /generate');
    // The tokenizer adds BOS itself, so the template gets an empty one (no doubled BOS).
    return this.template.render({ messages, add_generation_prompt: true, bos_token: '', eos_token: '' });
  }
}
