/** `node --import` entry of the k6 harness: installs hooks.ts before the script loads. */
import { register } from 'node:module';

register('./hooks.js', import.meta.url);
