import path from 'node:path';

import { runBasicService } from '@psa/shared';

runBasicService('billing', 3040, path.resolve(__dirname, '..'));
