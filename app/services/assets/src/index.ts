import path from 'node:path';

import { runBasicService } from '@psa/shared';

runBasicService('assets', 3060, path.resolve(__dirname, '..'));
