/** The MariaDB the suites, benchmarks and scripts use: `MYSQL_URL`, parsed. No side effects. */
export const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

/** `MYSQL_URL` as a mysql2/knex connection object, on `database` when given. */
/** Connection settings both knex (`connection`) and mysql2 (`createConnection`) accept. */
export interface MysqlConnection {
  host: string;
  port: number;
  user: string;
  password: string;
  database?: string;
}

export function mysqlConnection(database?: string, url = MYSQL_URL): MysqlConnection {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 3306),
    user: decodeURIComponent(parsed.username || 'root'),
    password: decodeURIComponent(parsed.password),
    ...(database === undefined ? {} : { database }),
  };
}
