import path from 'node:path';

import { runBasicService } from '@psa/shared';

runBasicService('projects', 3050, path.resolve(__dirname, '..'));
