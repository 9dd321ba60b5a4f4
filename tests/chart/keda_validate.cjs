// Validates KEDA ScaledObjects with @kubernetes-models/keda, whose validator is generated from
// KEDA's own CRD (openAPIV3Schema); the package comes from the npm registry at the version of
// .ci/npm/package-lock.json.  stdin: a JSON array of objects; stdout: a JSON array holding, per
// object, its errors as "path: message" strings (empty when valid).
"use strict";
const { ScaledObject } = require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");

const objects = JSON.parse(require("fs").readFileSync(0, "utf8"));
const errors = objects.map((obj) => {
    try {
        new ScaledObject(obj).validate();
        return [];
    } catch (err) {
        if (!Array.isArray(err.errors)) throw err;
        return err.errors.map((e) => `${e.instancePath || "/"}: ${e.message}`);
    }
});
process.stdout.write(JSON.stringify(errors));
