import express from 'express';
import type { NextFunction, Request, Response, Router } from 'express';
import { currentTenantId } from '../../lib/index'; // in your app: from 'objection-tenancy'
import { HttpError } from './errors';
import { Person } from './models/person';

// Express 4 does not catch rejected promises: hand them to the error handler.
function handle(fn: (req: Request, res: Response) => Promise<void>) {
  return (req: Request, res: Response, next: NextFunction): void => {
    fn(req, res).catch(next);
  };
}

function personId(raw: string | undefined): number {
  if (raw === undefined || !/^[1-9][0-9]{0,14}$/.test(raw)) {
    throw new HttpError(400, 'INVALID_PERSON_ID', 'The person id must be a positive integer.');
  }
  return Number(raw);
}

function personName(body: unknown): string {
  const name = (body as { name?: unknown } | undefined)?.name;
  const trimmed = typeof name === 'string' ? name.trim() : '';
  if (trimmed.length === 0 || trimmed.length > 100) {
    throw new HttpError(400, 'INVALID_BODY', 'Send a JSON body {"name": "..."} with a name of 1 to 100 characters.');
  }
  return trimmed;
}

/**
 * The tenant routes. They pass no knex anywhere: the tenancy middleware mounted before them put the
 * request in its tenant's scope, and `Person.query()` runs on that tenant's database.
 */
export function tenantRoutes(): Router {
  const router = express.Router();

  router.get(
    '/people',
    handle(async (_req, res) => {
      const people = await Person.query().select('id', 'name').orderBy('id');
      res.json({ tenant: currentTenantId(), people });
    }),
  );

  router.post(
    '/people',
    handle(async (req, res) => {
      const person = await Person.query().insert({ name: personName(req.body) });
      res.status(201).json({ tenant: currentTenantId(), person: { id: person.id, name: person.name } });
    }),
  );

  router.get(
    '/people/:id/pets',
    handle(async (req, res) => {
      const id = personId(req.params.id);
      const person = await Person.query().findById(id);
      if (person === undefined) throw new HttpError(404, 'PERSON_NOT_FOUND', `There is no person ${id} in this tenant.`);
      const pets = await person.$relatedQuery('pets').select('id', 'name', 'species').orderBy('id');
      res.json({ tenant: currentTenantId(), person: { id: person.id, name: person.name }, pets });
    }),
  );

  return router;
}
