import { describe, expect, it } from 'vitest';
import { StopTextFilter, cutAtStop } from '../src/server/stop-text.ts';

describe('OpenAI stop handling on streamed text', () => {
  it('holds back a possible stop prefix and cuts at the stop', () => {
    const f = new StopTextFilter(['\nQ:']);
    expect(f.push('Hello')).toBe('Hello');
    expect(f.push(' there\n')).toBe(' there');
    expect(f.push('Q')).toBe('');
    expect(f.push(': more')).toBe('');
    expect(f.stopped).toBe(true);
    expect(f.flush()).toBe('');
  });

  it('releases held text that turned out not to be a stop', () => {
    const f = new StopTextFilter(['END']);
    expect(f.push('the E')).toBe('the ');
    expect(f.push('N')).toBe('');
    expect(f.push('d')).toBe('ENd');
    expect(f.push('E')).toBe('');
    expect(f.flush()).toBe('E');
  });

  it('cuts whole texts at the earliest stop', () => {
    expect(cutAtStop('abc STOP def END', ['END', 'STOP'])).toBe('abc ');
    expect(cutAtStop('abc', ['x'])).toBe('abc');
  });
});
