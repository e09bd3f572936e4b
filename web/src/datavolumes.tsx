// CDI DataVolumes with their import/upload progress.
import { age, Obj, paths } from './api';
import { ErrorBox, Progress, useWatch } from './ui';

export function DvTable({ items }: { items: Obj[] }) {
  return (
    <table class="list" aria-label="DataVolumes">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Phase</th>
          <th scope="col">Progress</th>
          <th scope="col">Size</th>
          <th scope="col">Source</th>
          <th scope="col">Age</th>
        </tr>
      </thead>
      <tbody>
        {items.map((dv) => {
          const src = dv.spec?.source || {};
          const kind = Object.keys(src)[0] || '';
          return (
            <tr key={dv.metadata.name} data-dv={dv.metadata.name}>
              <th scope="row">{dv.metadata.name}</th>
              <td>{dv.status?.phase || 'Pending'}</td>
              <td>
                <Progress value={dv.status?.progress} label={`${dv.metadata.name} progress`} />
              </td>
              <td>{dv.spec?.storage?.resources?.requests?.storage || dv.spec?.pvc?.resources?.requests?.storage || ''}</td>
              <td>{kind === 'http' ? src.http?.url : kind}</td>
              <td>{age(dv.metadata.creationTimestamp)}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

export function DataVolumes({ ns }: { ns: string }) {
  const dvs = useWatch(paths.dvs(ns));
  return (
    <section aria-labelledby="dvs-h">
      <h1 id="dvs-h" tabIndex={-1}>DataVolumes in {ns}</h1>
      {dvs.error && <ErrorBox error={dvs.error} />}
      {!dvs.loaded && !dvs.error && <p>Loading…</p>}
      {dvs.loaded && dvs.items.length === 0 && <p>No DataVolumes in this namespace.</p>}
      {dvs.items.length > 0 && <DvTable items={dvs.items} />}
    </section>
  );
}
