// express5 is Express 5 installed under an alias (npm:express@^5) beside Express 4; its API surface
// used by the tests is the same as Express 4's typings.
declare module 'express5' {
  import express = require('express');
  export = express;
}
