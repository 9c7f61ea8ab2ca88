import { app } from "../../scripts/app.js"; app.registerExtension({ name: "webpack.hello" });
