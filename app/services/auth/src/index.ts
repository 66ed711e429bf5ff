import path from 'node:path';

import { runBasicService } from '@psa/shared';

runBasicService('auth', 3010, path.resolve(__dirname, '..'));
