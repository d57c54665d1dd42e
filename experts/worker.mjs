// Piscina cannot load a .ts worker under tsx on Node 20, so this bootstrap registers tsx first.
import { register } from 'tsx/esm/api';

register();
const { initialize } = await import('./worker.ts');
export default initialize();
