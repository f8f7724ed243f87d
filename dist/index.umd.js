/*
 * samseg's App-side operator (plain JavaScript: no build step; the App loads this file with a <script> tag and
 * exposes its own packages as globals: window.__foo__ = @fiftyone/operators, window.__fos__ = @fiftyone/state,
 * window.recoil = Recoil).
 *
 * Why it exists: the App's sample modal keeps its own copy of the sidebar's field list
 * (sidebarGroupsDefinition(true)). The App copies the grid's list into the modal only when a sample is opened by
 * a click in the grid; reload_dataset updates the grid's list alone, and the open_sample operator (the QA
 * panel's "Open") copies nothing. So fields a run just wrote were missing from an open modal, and from one opened
 * from the panel, until the page was loaded again.
 *
 * The open modal's sample is not refetched either (its query's variables did not change), so its new values
 * read None.
 *
 * The grid's list itself keeps the groups it was loaded with: a new field goes to a default group (labels,
 * primitives) even when the dataset's app config lists it in samseg's group.
 *
 * show_new_fields: waits (up to `timeout_ms`) until the grid's sidebar lists every field in `paths` (the
 * App is reloading the dataset); moves the listed fields of `group` ({name, paths}: samseg's group as stored in
 * the dataset's app config) into that group (created after "labels" when missing); gives the modal the same
 * list, as a click in the grid would; and, when a sample is open, fetches it again with the App's own sample
 * query and hands it to the App's useUpdateSamples.
 */
(function () {
  "use strict";
  var foo = window.__foo__;
  var fos = window.__fos__;
  var fou = window.__fou__;
  var recoil = window.recoil;
  if (!foo || !foo.Operator || !foo.registerOperator) {
    console.warn("samseg: this App exposes no @fiftyone/operators; show_new_fields is not registered");
    return;
  }
  // an App whose packages differ still gets the operator (Python triggers it after every run), as a no-op
  var supported = !!(
    fos && fou && recoil && fos.sidebarGroupsDefinition && fos.useUpdateSamples && fos.modalSelector
  );

  var PLUGIN = "@samseg/samseg";
  var POLL_MS = 100;
  // the fields of the App's mainSampleQuery that useUpdateSamples reads (ImageSample: samseg's media)
  var SAMPLE_QUERY =
    "query samsegModalSample($dataset: String!, $view: BSONArray!, $filter: SampleFilter!) {" +
    " sample(dataset: $dataset, view: $view, filter: $filter) { __typename ... on ImageSample { id sample } } }";

  function listedPaths(groups) {
    var paths = [];
    (groups || []).forEach(function (group) {
      paths = paths.concat(group.paths || []);
    });
    return paths;
  }

  function lists(groups, field) {
    return listedPaths(groups).some(function (path) {
      return path === field || path.indexOf(field + ".") === 0;
    });
  }

  // `groups` with the listed paths of `group` moved into a group of that name (only those: any other field,
  // and every other group, stays where the user has it)
  function placeInGroup(groups, group) {
    if (!group || !group.name || !(group.paths || []).length) return groups;
    var listed = listedPaths(groups);
    var mine = group.paths.filter(function (path) { return listed.indexOf(path) >= 0; });
    if (!mine.length) return groups;
    var placed = groups.map(function (g) {
      if (g.name === group.name) return g;
      return Object.assign({}, g, {
        paths: (g.paths || []).filter(function (path) { return mine.indexOf(path) < 0; }),
      });
    });
    var index = placed.findIndex(function (g) { return g.name === group.name; });
    if (index < 0) {
      var labels = placed.findIndex(function (g) { return g.name === "labels"; });
      placed.splice(labels + 1, 0, { name: group.name, paths: mine });
      return placed;
    }
    var current = placed[index].paths || [];
    placed[index] = Object.assign({}, placed[index], {
      paths: current.concat(mine.filter(function (path) { return current.indexOf(path) < 0; })),
    });
    return placed;
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  class ShowNewFields extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "show_new_fields",
        label: "samseg: show new fields in the sidebar and the sample modal",
        unlisted: true,
      });
    }

    useHooks() {
      if (!supported) return {};
      var gridGroups = recoil.useRecoilCallback(function (cb) {
        return function () {
          return cb.snapshot.getPromise(fos.sidebarGroupsDefinition(false));
        };
      }, []);
      var setGroups = recoil.useRecoilCallback(function (cb) {
        return function (groups) {
          cb.set(fos.sidebarGroupsDefinition(false), groups);
          cb.set(fos.sidebarGroupsDefinition(true), groups);
        };
      }, []);
      var openSample = recoil.useRecoilCallback(function (cb) {
        return async function () {
          var selector = await cb.snapshot.getPromise(fos.modalSelector);
          if (!selector || !selector.id) return null;
          return {
            id: selector.id,
            dataset: await cb.snapshot.getPromise(fos.datasetName),
            view: await cb.snapshot.getPromise(fos.view),
          };
        };
      }, []);
      return {
        gridGroups: gridGroups,
        setGroups: setGroups,
        openSample: openSample,
        updateSamples: fos.useUpdateSamples(),
      };
    }

    async refetchOpenSample(hooks) {
      var open = await hooks.openSample();
      if (!open) return false;
      var response;
      try {
        response = await fou.getFetchFunction()("POST", "/graphql", {
          query: SAMPLE_QUERY,
          variables: { dataset: open.dataset, view: open.view, filter: { id: open.id } },
        });
      } catch (error) {
        console.warn("samseg: could not fetch the open sample again", error);
        return false;  // the field list is shown; the values show when the sample is opened again
      }
      var sample = response && response.data && response.data.sample && response.data.sample.sample;
      if (!sample) return false;
      hooks.updateSamples([[open.id, sample]]);
      return true;
    }

    async execute(ctx) {
      if (!supported) {
        console.warn("samseg: this App's packages differ from FiftyOne 1.22's; new fields show after a reload");
        return { listed: [], refetched: false, supported: false };
      }
      var params = ctx.params || {};
      var fields = params.paths || [];
      var deadline = Date.now() + (params.timeout_ms || 15000);
      var groups = await ctx.hooks.gridGroups();
      while (!fields.every(function (f) { return lists(groups, f); }) && Date.now() < deadline) {
        await sleep(POLL_MS);
        groups = await ctx.hooks.gridGroups();
      }
      groups = placeInGroup(groups, params.group);
      ctx.hooks.setGroups(groups);
      var refetched = await this.refetchOpenSample(ctx.hooks);
      return {
        listed: fields.filter(function (f) { return lists(groups, f); }),
        refetched: refetched,
        supported: true,
      };
    }
  }

  foo.registerOperator(ShowNewFields, PLUGIN);
})();
